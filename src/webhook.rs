//! The configured alert webhook (`[notify]`): where alerts go, read from the config or
//! its file, and how to name it — in `check`, logs and errors — without the secret parts
//! of its URL (path and query often hold a token). The daemon's notifier posts to it.

use crate::config::Config;

/// Where alerts go; `None` = alerts are logged only.
#[derive(Clone)]
pub struct Target {
    pub uri: http::Uri,
    /// The URL as configured, to scrub from error messages.
    secret: String,
}

impl Target {
    pub fn scrub(&self, msg: &str) -> String {
        let mut m = msg.replace(&self.secret, "<webhook url>");
        if let Some(pq) = self.uri.path_and_query() {
            if pq.as_str().len() > 1 {
                m = m.replace(pq.as_str(), "<webhook path>");
            }
        }
        m
    }
}

/// Read the webhook URL from `[notify]`. The error never contains the URL.
pub fn target(cfg: &Config) -> anyhow::Result<Option<Target>> {
    let url = match (&cfg.notify.webhook_url, &cfg.notify.webhook_url_file) {
        (Some(u), _) => u.trim().to_string(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| {
                crate::user_error!(
                    "cannot read notify.webhook_url_file {}: {e}; make it readable by this user",
                    f.display()
                )
            })?
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
        (None, None) => return Ok(None),
    };
    let uri: http::Uri = url.parse().map_err(|_| {
        crate::user_error!(
            "the webhook URL (notify.webhook_url or the file notify.webhook_url_file) is not a valid http:// or https:// URL"
        )
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(crate::user_error!(
            "the webhook URL (notify.webhook_url or the file notify.webhook_url_file) must start with http:// or https:// and name a host"
        ));
    }
    Ok(Some(Target { uri, secret: url }))
}

/// `check`'s line about the webhook: where alerts go, without the secret parts of the
/// URL (`None` when no webhook is configured).
pub fn describe_target(cfg: &Config) -> anyhow::Result<Option<String>> {
    Ok(target(cfg)?.map(|t| {
        format!(
            "alerts go to {}://{} (path and query not shown: they may hold a token)",
            t.uri.scheme_str().unwrap_or("?"),
            t.uri.authority().map(|a| a.host()).unwrap_or("?")
        )
    }))
}
