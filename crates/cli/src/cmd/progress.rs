//! The byte-progress bar shared by the data subcommands (the library reports, the CLI draws).

use indicatif::{ProgressBar, ProgressStyle};

pub fn bytes_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static template"),
    );
    bar
}
