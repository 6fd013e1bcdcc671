//! The job `plan` and `tune` start from: a config file and the fields most often changed
//! over it, read the same way by both.

use std::path::PathBuf;

use clap::Args;

use crate::algo::ModelKind;
use crate::data::DataLocation;
use crate::job::JobConfig;

/// The base job's flags, flattened into the commands that vary a job.
#[derive(Debug, Args)]
pub struct BaseJobArgs {
    /// TOML file with the base job's settings (see examples/); the flags below override it.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// LibSVM file or partition location; none: synthesise data.
    #[arg(long)]
    pub data: Option<DataLocation>,
    /// Rows to synthesise when --data is absent.
    #[arg(long)]
    pub synth_rows: Option<usize>,
    /// Model.
    #[arg(long, value_enum)]
    pub model: Option<ModelKind>,
    /// Epochs.
    #[arg(long, short)]
    pub epochs: Option<u32>,
    /// Where run folders go (the command's own files too, unless said otherwise).
    #[arg(long)]
    pub runs_dir: Option<PathBuf>,
}

impl BaseJobArgs {
    /// The config file's settings (else the defaults) with these flags over them.
    pub fn config(&self) -> anyhow::Result<JobConfig> {
        let mut c = match &self.config {
            Some(path) => JobConfig::from_file(path)?,
            None => JobConfig::default(),
        };
        if let Some(v) = self.synth_rows {
            c.synth_rows = v;
        }
        if let Some(v) = self.model {
            c.model = v;
        }
        if let Some(v) = self.epochs {
            c.epochs = v;
        }
        if let Some(v) = &self.runs_dir {
            c.runs_dir = v.clone();
        }
        if let Some(d) = &self.data {
            c.data = Some(d.clone());
        }
        Ok(c)
    }
}
