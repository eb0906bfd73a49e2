//! SDFS on one agent: the on-disk store and the data path. Not running yet.

use dml_shared::api::Response;
use dml_shared::framing::{DEFAULT_MAX_FRAME, write_frame};
use dml_shared::sdfs::DataRequest;
use dml_shared::wire::{self, Kind};
use tokio::net::TcpStream;

/// Cheap to clone; reaches the SDFS store.
#[derive(Clone, Default)]
pub struct SdfsHandle {}

impl SdfsHandle {
    /// Serves one data-path request; it owns the stream until it returns.
    pub async fn serve_data(
        &self,
        _req: DataRequest,
        stream: &mut TcpStream,
    ) -> dml_shared::Result<()> {
        let msg = Response::Error("SDFS is not running on this agent".into());
        write_frame(
            stream,
            &wire::encode(Kind::Response, &msg),
            DEFAULT_MAX_FRAME,
        )
        .await
    }
}
