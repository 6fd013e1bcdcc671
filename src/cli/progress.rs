//! Progress bars (indicatif) for data preparation and training.

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::job::driver::JobProgress;
use crate::job::plan::DataProgress;
use crate::job::records::EpochRecord;

/// Shows one bar at a time on stderr; draws nothing when disabled or not on a terminal.
pub struct BarUi {
    enabled: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl BarUi {
    /// A UI that draws when `enabled`.
    pub fn new(enabled: bool) -> Self {
        BarUi {
            enabled,
            bar: Mutex::new(None),
        }
    }

    fn start(&self, total: u64, template: &str, label: &str) {
        let bar = if self.enabled {
            ProgressBar::new(total)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        *self.bar.lock().expect("bar lock") = Some(bar);
    }

    fn with(&self, f: impl FnOnce(&ProgressBar)) {
        if let Some(bar) = self.bar.lock().expect("bar lock").as_ref() {
            f(bar);
        }
    }

    fn clear(&self) {
        if let Some(bar) = self.bar.lock().expect("bar lock").take() {
            bar.finish_and_clear();
        }
    }
}

impl DataProgress for BarUi {
    fn phase(&self, label: &str, total: u64, bytes: bool) {
        let template = if bytes {
            "{prefix:>10} [{bar:40}] {bytes}/{total_bytes} ({eta})"
        } else {
            "{prefix:>10} [{bar:40}] {human_pos}/{human_len} rows ({eta})"
        };
        self.start(total, template, label);
    }

    fn advance(&self, done: u64) {
        self.with(|b| b.set_position(done));
    }

    fn done(&self) {
        self.clear();
    }
}

impl JobProgress for BarUi {
    fn training(&self, total: u64) {
        self.start(
            total,
            "{prefix:>10} [{bar:40}] {pos}/{len} worker-epochs {elapsed_precise} {msg}",
            "train",
        );
    }

    fn trained(&self, done: u64, latest: Option<&EpochRecord>) {
        self.with(|b| {
            b.set_position(done);
            if let Some(r) = latest {
                let detail = match (r.test_accuracy, r.val_accuracy, r.objective) {
                    (Some(test), _, _) => format!("test acc {:.2}%", 100.0 * test),
                    (None, Some(acc), _) => format!("val acc {:.2}%", 100.0 * acc),
                    (None, None, Some(obj)) => format!("objective {obj:.6e}"),
                    (None, None, None) => String::new(),
                };
                b.set_message(format!(
                    "epoch {} loss {:.4} {detail}",
                    r.epoch, r.train_loss
                ));
            }
        });
    }

    fn finished(&self) {
        self.clear();
    }
}
