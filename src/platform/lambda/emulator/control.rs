//! The local Lambda's control plane: the calls `lambdaml lambda deploy` makes
//! (`CreateFunction`, `GetFunction`, `UpdateFunctionCode`, `UpdateFunctionConfiguration`,
//! `PutFunctionEventInvokeConfig`), so that deploying is tested as the README runs it. A
//! deployed zip's `bootstrap` becomes the code new instances run.

use std::io::Read;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

use super::{Emulator, FunctionConfig, MAX_UNZIPPED_BYTES, aws_error, function_name};

/// An AWS error answer of the control plane.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        aws_error(self.status, self.code, &self.message)
    }
}

fn invalid(message: &str) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "InvalidParameterValueException",
        message: message.to_string(),
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn configuration_json(emu: &Emulator, f: &FunctionConfig, version: u64) -> Value {
    let env: serde_json::Map<String, Value> = f
        .env
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "FunctionName": emu.opts.function,
        "FunctionArn": emu.arn,
        "Runtime": "provided.al2023",
        "Handler": "bootstrap",
        "Role": f.role,
        "Timeout": f.timeout.as_secs_f64().ceil() as u64,
        "MemorySize": f.memory_mb,
        "Version": "$LATEST",
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "Architectures": [f.arch],
        "Environment": { "Variables": env },
        "RevisionId": version.to_string(),
    })
}

/// `GetFunctionConfiguration`.
pub(super) fn describe(emu: &Emulator) -> Response {
    match emu.function() {
        Some((f, version)) => json_response(StatusCode::OK, configuration_json(emu, &f, version)),
        None => emu.unknown(&emu.opts.function).expect("no function"),
    }
}

/// The request body as JSON.
fn parse(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| invalid(&format!("the request is not JSON: {e}")))
}

/// Applies the settings a create or update request carries to `f`.
fn apply_settings(f: &mut FunctionConfig, req: &Value) -> Result<(), ApiError> {
    if let Some(t) = req.get("Timeout").and_then(Value::as_u64) {
        if !(1..=900).contains(&t) {
            return Err(invalid(&format!("Timeout must be 1-900 seconds, not {t}")));
        }
        f.timeout = std::time::Duration::from_secs(t);
    }
    if let Some(m) = req.get("MemorySize").and_then(Value::as_u64) {
        if !(128..=10_240).contains(&m) {
            return Err(invalid(&format!(
                "MemorySize must be 128-10240 MB, not {m}"
            )));
        }
        f.memory_mb = m as u32;
    }
    if let Some(vars) = req
        .pointer("/Environment/Variables")
        .and_then(Value::as_object)
    {
        f.env = vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
    }
    if let Some(role) = req.get("Role").and_then(Value::as_str) {
        f.role = role.to_string();
    }
    if let Some(arch) = req.pointer("/Architectures/0").and_then(Value::as_str) {
        f.arch = arch.to_string();
    }
    Ok(())
}

/// Unpacks the `bootstrap` of a base64 zip (`ZipFile`) where instances can run it.
fn install_code(emu: &Emulator, zip_b64: Option<&str>) -> Result<std::path::PathBuf, ApiError> {
    let zip_b64 =
        zip_b64.ok_or_else(|| invalid("Code.ZipFile is missing (only zips are served here)"))?;
    let zip = base64::engine::general_purpose::STANDARD
        .decode(zip_b64)
        .map_err(|e| invalid(&format!("ZipFile is not base64: {e}")))?;
    let bad_zip =
        |e: &dyn std::fmt::Display| invalid(&format!("Could not unzip uploaded file: {e}"));
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).map_err(|e| bad_zip(&e))?;
    let mut entry = archive.by_name("bootstrap").map_err(|_| {
        invalid("the zip holds no 'bootstrap' (the runtime provided.al2023 runs it)")
    })?;
    if entry.size() > MAX_UNZIPPED_BYTES {
        return Err(invalid(&format!(
            "Unzipped size must be smaller than {MAX_UNZIPPED_BYTES} bytes"
        )));
    }
    let n = emu.ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let root = match &emu.opts.log_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("lambdaml-emulator-{}", std::process::id())),
    };
    let dir = root.join(format!("code-{n}"));
    let exe = dir.join("bootstrap");
    let written = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .by_ref()
            .take(MAX_UNZIPPED_BYTES)
            .read_to_end(&mut bytes)?;
        std::fs::write(&exe, bytes)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))
    })();
    written.map_err(|e| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "ServiceException",
        message: format!("could not unpack the code to {}: {e}", dir.display()),
    })?;
    Ok(exe)
}

/// `CreateFunction`: this local Lambda serves one function, named by `--function`.
pub(super) async fn create(State(emu): State<std::sync::Arc<Emulator>>, body: Bytes) -> Response {
    let result = (|| -> Result<(), ApiError> {
        let req = parse(&body)?;
        let name = req
            .get("FunctionName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if function_name(name) != emu.opts.function {
            return Err(invalid(&format!(
                "this local Lambda serves one function, '{}' (--function), not '{name}'",
                emu.opts.function
            )));
        }
        if emu.function().is_some() {
            return Err(ApiError {
                status: StatusCode::CONFLICT,
                code: "ResourceConflictException",
                message: format!("Function already exist: {name}"),
            });
        }
        match req.get("Runtime").and_then(Value::as_str) {
            Some("provided.al2023" | "provided.al2") => {}
            other => {
                return Err(invalid(&format!(
                    "this local Lambda runs custom runtimes (provided.al2023), not {other:?}"
                )));
            }
        }
        let exe = install_code(&emu, req.pointer("/Code/ZipFile").and_then(Value::as_str))?;
        let mut f = FunctionConfig {
            exe,
            timeout: std::time::Duration::from_secs(3),
            memory_mb: 128,
            env: Vec::new(),
            role: String::new(),
            arch: "x86_64".into(),
        };
        apply_settings(&mut f, &req)?;
        emu.install(f);
        Ok(())
    })();
    match result {
        Ok(()) => {
            tracing::info!("function created");
            let mut r = describe(&emu);
            *r.status_mut() = StatusCode::CREATED;
            r
        }
        Err(e) => e.into_response(),
    }
}

/// `GetFunction`.
pub(super) async fn get_function(
    State(emu): State<std::sync::Arc<Emulator>>,
    Path(name): Path<String>,
) -> Response {
    if let Some(r) = emu.unknown(&name) {
        return r;
    }
    let (f, version) = emu.function().expect("checked by unknown");
    json_response(
        StatusCode::OK,
        json!({
            "Configuration": configuration_json(&emu, &f, version),
            "Code": { "RepositoryType": "S3", "Location": f.exe.display().to_string() },
        }),
    )
}

/// Applies `edit` to the deployed function `name` from the request `body`, and answers
/// with its new configuration.
fn change(
    emu: &Emulator,
    name: &str,
    body: &Bytes,
    edit: impl FnOnce(&mut FunctionConfig, &Value) -> Result<(), ApiError>,
) -> Response {
    if let Some(r) = emu.unknown(name) {
        return r;
    }
    let result = parse(body).and_then(|req| {
        let (mut f, _) = emu.function().expect("checked by unknown");
        edit(&mut f, &req)?;
        emu.install(f);
        Ok(())
    });
    match result {
        Ok(()) => describe(emu),
        Err(e) => e.into_response(),
    }
}

/// `UpdateFunctionCode`: new invocations run the new code.
pub(super) async fn update_code(
    State(emu): State<std::sync::Arc<Emulator>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    change(&emu, &name, &body, |f, req| {
        f.exe = install_code(&emu, req.get("ZipFile").and_then(Value::as_str))?;
        apply_settings(f, &json!({ "Architectures": req.get("Architectures") }))
    })
}

/// `UpdateFunctionConfiguration`.
pub(super) async fn update_configuration(
    State(emu): State<std::sync::Arc<Emulator>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    change(&emu, &name, &body, apply_settings)
}

/// `PutFunctionEventInvokeConfig`: recorded (this local Lambda never retries a failed
/// event, as a function deployed with 0 retries).
pub(super) async fn put_invoke_config(
    State(emu): State<std::sync::Arc<Emulator>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if let Some(r) = emu.unknown(&name) {
        return r;
    }
    let req = match parse(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let config = json!({
        "FunctionArn": emu.arn,
        "MaximumRetryAttempts": req.get("MaximumRetryAttempts"),
        "MaximumEventAgeInSeconds": req.get("MaximumEventAgeInSeconds"),
        "LastModified": now,
    });
    emu.book.lock().unwrap().invoke_config = Some(config.clone());
    json_response(StatusCode::OK, config)
}
