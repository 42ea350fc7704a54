//! `shoal group` and `shoal groups`: consumer group members and their state.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use super::Error;

/// `shoal group <BUS> <GROUP> --topic <T>`.
pub(super) fn run(bus: &Path, group: &str, topic: &str, exit_when_idle: Option<Duration>) -> Result<ExitCode, Error> {
    let _ = (bus, group, topic, exit_when_idle);
    Err(Error::new("consumer groups are not built yet"))
}

/// `shoal groups <BUS>`.
pub(super) fn list(bus: &Path) -> Result<ExitCode, Error> {
    let _ = bus;
    Err(Error::new("consumer groups are not built yet"))
}
