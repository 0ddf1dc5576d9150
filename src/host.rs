//! This host's identity: the name recorded in manifests, advisory-lock holders and
//! alerts. A leaf module, so that low-level modules (`pg`, `repo`) can name the host
//! without depending on `manifest`.

/// This host's name (the kernel's node name, as `uname -n` prints it).
pub fn local_hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}
