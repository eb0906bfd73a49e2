//! An async face on a [`TempObject`]: chunks go over a bounded channel to a
//! blocking thread that writes and hashes them, so disk IO never runs on the
//! async runtime and memory stays at a few chunks.

use super::error::SdfsError;
use super::store::{ObjectMeta, Store};
use dml_shared::auth::put_seal::{Opened, Opener, PutSeal, SealError};
use dml_shared::sdfs::Checksum;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// One chunk of a stream, shared between the local writer and the forwarder.
pub type Chunk = Arc<Vec<u8>>;

/// What flows down a writer's channel. A channel closed without `End`
/// abandons the write.
pub enum Piece {
    Chunk(Chunk),
    /// The end, with the checksum if it came after the bytes.
    End(Option<Checksum>),
    /// Answered once every earlier chunk is on disk (local writer only).
    Written(oneshot::Sender<()>),
}

/// A version being written on this agent.
pub struct LocalWriter {
    tx: mpsc::Sender<Piece>,
    join: JoinHandle<Result<ObjectMeta, SdfsError>>,
}

impl LocalWriter {
    /// Starts the blocking writer; errors (bad name, no space for the temp
    /// file) come back from [`LocalWriter::send`] / [`LocalWriter::finish`].
    /// Without `checksum`, [`LocalWriter::finish`] must bring it. `plan`:
    /// the put's plan id, `None` for a copy of a committed version.
    /// `seal`: the chunks are a sealed put's frames, opened here (the end
    /// frame among them); one that does not open, or a stream without the
    /// end frame, fails the write and nothing is stored.
    #[allow(clippy::too_many_arguments)]
    pub fn begin(
        store: &Store,
        name: &str,
        version: u64,
        size: u64,
        checksum: Option<Checksum>,
        plan: Option<u64>,
        seal: Option<PutSeal>,
        queue: usize,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Piece>(queue.max(1));
        let store = store.clone();
        let name = name.to_string();
        let join = tokio::task::spawn_blocking(move || {
            let mut obj = store.begin(&name, version, size, checksum.unwrap_or_default())?;
            obj.set_plan(plan);
            let mut opener = seal.map(Opener::new);
            let refused = |reason| SdfsError::Unsealed {
                agent: store.agent(),
                name: name.clone(),
                version,
                reason,
            };
            while let Some(piece) = rx.blocking_recv() {
                match piece {
                    Piece::Chunk(c) => match &mut opener {
                        None => obj.write(&c)?,
                        Some(o) => {
                            // Opened in place once the forwarder is done with it.
                            let frame = Arc::try_unwrap(c).unwrap_or_else(|c| c.to_vec());
                            match o.open(frame).map_err(refused)? {
                                Opened::Data(bytes) => obj.write(&bytes)?,
                                Opened::End => {}
                            }
                        }
                    },
                    Piece::Written(ack) => {
                        let _ = ack.send(());
                    }
                    Piece::End(_) if opener.as_ref().is_some_and(|o| o.finish().is_err()) => {
                        return Err(refused(SealError::Truncated));
                    }
                    Piece::End(trailer) => match (checksum, trailer) {
                        (_, Some(c)) | (Some(c), None) => {
                            obj.set_checksum(c);
                            return obj.finish();
                        }
                        (None, None) => break,
                    },
                }
            }
            Err(SdfsError::Aborted {
                agent: store.agent(),
                name,
                version,
            })
        });
        Self { tx, join }
    }

    /// Queues a chunk; false when the writer has stopped (its error is then
    /// returned by [`LocalWriter::finish`]).
    pub async fn send(&self, chunk: Chunk) -> bool {
        self.tx.send(Piece::Chunk(chunk)).await.is_ok()
    }

    /// Waits until every queued chunk is written; false when the writer
    /// stopped on an error (then returned by [`LocalWriter::finish`]).
    pub async fn written(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Piece::Written(tx)).await.is_ok() && rx.await.is_ok()
    }

    /// Ends the stream: checks (against `trailer` if the checksum came
    /// after the bytes), fsyncs and renames the version into place.
    pub async fn finish(self, trailer: Option<Checksum>) -> Result<ObjectMeta, SdfsError> {
        let _ = self.tx.send(Piece::End(trailer)).await;
        match self.join.await {
            Ok(r) => r,
            Err(e) => Err(SdfsError::Stream {
                peer: "local writer".into(),
                reason: e.to_string(),
            }),
        }
    }
}
