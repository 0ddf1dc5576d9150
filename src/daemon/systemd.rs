//! The systemd notification protocol (`Type=notify`): `READY=1` once the config is loaded
//! and the repository answered, `STATUS=` naming the running job, `WATCHDOG=1` pings when
//! the unit sets `WatchdogSec=`, `RELOADING=1`/`STOPPING=1` around reloads and shutdown.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op. A failed send is logged at
//! DEBUG and otherwise ignored: the daemon's work must not depend on the service manager.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Before re-reading the config on SIGHUP; [`ready`] ends the reload.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC` (systemd's advice), or
/// `None` when the unit has no `WatchdogSec=` (or it is meant for another process).
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}
