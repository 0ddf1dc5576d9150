//! What each of several repositories holds on its own, for `list` and `info` (which
//! otherwise show the union of them all): its backups, and what it alone could
//! restore.

use serde::Serialize;

use crate::config::Config;
use crate::ops::status::RepoStatus;
use crate::recovery::plan::Window;
use crate::repo;

/// One repository of several.
#[derive(Debug, Clone, Serialize)]
pub struct RepositoryView {
    pub name: String,
    pub location: String,
    pub required: bool,
    /// What it receives: `wal`, `physical`, `logical`, `exports`.
    pub kinds: Vec<String>,
    /// Its complete backups, oldest first.
    pub backups: Vec<String>,
    /// The windows a restore from this repository alone reaches.
    pub recoverable_windows: Vec<Window>,
    pub wal_gaps: Vec<String>,
    pub wal_segments: usize,
    /// Why it could not be read; the other fields are then empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Each repository on its own, when several are configured and no `--repo` chose one;
/// otherwise nothing. One that cannot be read is shown with its error: the others
/// are still shown.
pub async fn each_repository(cfg: &Config) -> Vec<RepositoryView> {
    if !cfg.several_repositories() || cfg.selected_repository.is_some() {
        return Vec::new();
    }
    let mut views = Vec::new();
    for r in cfg.all_repositories() {
        let c = cfg.with_repository(&r);
        let mut view = RepositoryView {
            name: r.name.clone(),
            location: r.name.clone(),
            required: r.required,
            kinds: r.kinds.iter().map(|k| k.name().to_string()).collect(),
            backups: Vec::new(),
            recoverable_windows: Vec::new(),
            wal_gaps: Vec::new(),
            wal_segments: 0,
            error: None,
        };
        let loaded = async {
            let repo = repo::open(&c).await?;
            view.location = repo.describe();
            RepoStatus::load(repo.as_ref()).await
        }
        .await;
        match loaded {
            Ok(st) => {
                view.backups = st.catalog.complete.iter().map(|m| m.id.clone()).collect();
                view.recoverable_windows = st.windows.clone();
                view.wal_gaps = st.gaps.iter().map(ToString::to_string).collect();
                view.wal_segments = st.inventory.segments.values().map(|m| m.len()).sum();
            }
            Err(e) => {
                tracing::warn!(repository = %r.name, "cannot read repository {}: {e:#}", r.name);
                view.error = Some(format!("{e:#}"));
            }
        }
        views.push(view);
    }
    views
}

/// The names of the repositories in `views` that hold backup `id`.
pub fn holding(views: &[RepositoryView], id: &str) -> Vec<String> {
    views
        .iter()
        .filter(|v| v.backups.iter().any(|b| b == id))
        .map(|v| v.name.clone())
        .collect()
}
