//! `backupctl wal-fetch %f %p`: PostgreSQL's restore_command.
//!
//! A file that is not in the archive exits 1 without a word: that is how recovery learns
//! the archive has ended, and PostgreSQL asks for files that never existed (the next
//! timeline's history) as a matter of course. Anything else that goes wrong — checksum
//! mismatch, repository errors — exits 1 with the reason on stderr, which PostgreSQL
//! puts in its log. `%p` is written atomically: a temp file beside it, then a rename.

use crate::cli::WalFetchArgs;
use crate::commands::Ctx;
use crate::error::Exit;
use crate::pg::wal;
use crate::repo::{self, layout, GetObject, RepoError};
use crate::transfer;

pub async fn run(ctx: &Ctx, args: WalFetchArgs) -> anyhow::Result<()> {
    let name = args.name;
    if wal::classify(&name).is_none() {
        return Err(crate::user_error!(
            "{name} is not a WAL file name; use backupctl wal-fetch only as restore_command = '... wal-fetch %f %p'"
        ));
    }
    let repo = repo::open(&ctx.cfg).await?;
    let codec = crate::codec::Codec::from_config(&ctx.cfg.compression);
    let key = layout::wal_key(&name, codec.algorithm).expect("classified WAL name");

    let (key, obj): (String, GetObject) = match repo.get(&key).await {
        Ok(obj) => (key, obj),
        Err(RepoError::NotFound { .. }) => {
            // Archived under another compression setting?
            let base = layout::wal_key_base(&name).expect("classified WAL name");
            let other = repo
                .list(&base)
                .await?
                .into_iter()
                .find(|o| layout::parse_wal_key(&o.key).is_some_and(|(n, _)| n == name));
            let Some(other) = other else {
                tracing::debug!(wal = %name, "not in the archive");
                return Err(Exit::quiet(1).into());
            };
            match repo.get(&other.key).await {
                Ok(obj) => (other.key, obj),
                Err(RepoError::NotFound { .. }) => return Err(Exit::quiet(1).into()),
                Err(e) => return Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    let (_, algorithm) = layout::parse_wal_key(&key).expect("listed WAL key");
    let expected = layout::stored_digest(&obj.meta.metadata);
    if expected.is_none() {
        tracing::warn!(key = %key, "no checksum recorded for this WAL object; relying on the compression format's own check");
    }
    let size = transfer::object_to_file(obj, &key, algorithm, expected, &args.dest)
        .await
        .map_err(|e| e.context(format!("restore {name} from the archive")))?;
    tracing::info!(wal = %name, bytes = size, "restored from the archive");
    Ok(())
}
