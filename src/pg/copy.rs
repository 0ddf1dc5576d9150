//! Feeding rendered COPY data (the lines `pg_restore --data-only -f FILE` writes after a
//! `COPY … FROM stdin;` header, up to `\.`) into a `COPY … FROM STDIN` of our own, in
//! chunks of about 1 MiB. Only the data lines are sent: the stored SQL is never run.

use anyhow::Context;
use bytes::Bytes;
use futures_util::SinkExt;
use tokio::io::{AsyncBufRead, Lines};
use tokio_postgres::Client;

const CHUNK: usize = 1 << 20;

/// Send the data lines that follow a COPY header in `lines` (up to `\.`) through
/// `copy_sql` (`COPY t (cols) FROM STDIN`); returns the rows PostgreSQL copied. `what`
/// names the rows in errors (`the rows of export X`).
pub async fn send_block<R: AsyncBufRead + Unpin>(
    client: &Client,
    lines: &mut Lines<R>,
    copy_sql: &str,
    what: &str,
) -> anyhow::Result<u64> {
    let sink = client
        .copy_in::<_, Bytes>(copy_sql)
        .await
        .with_context(|| format!("copy {what}"))?;
    futures_util::pin_mut!(sink);
    let mut buf = Vec::with_capacity(CHUNK);
    loop {
        let row = lines
            .next_line()
            .await?
            .with_context(|| format!("{what} end without \\."))?;
        if row == "\\." {
            break;
        }
        buf.extend_from_slice(row.as_bytes());
        buf.push(b'\n');
        if buf.len() >= CHUNK {
            sink.send(Bytes::from(std::mem::take(&mut buf))).await?;
        }
    }
    if !buf.is_empty() {
        sink.send(Bytes::from(buf)).await?;
    }
    sink.finish().await.with_context(|| format!("copy {what}"))
}
