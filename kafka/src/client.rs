//! A minimal Kafka client for node-to-node requests (a follower's Fetch and
//! OffsetForLeaderEpoch to its leader): one connection, one request at a time.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest answer taken from a peer (a fetch answer is capped well below).
const MAX_ANSWER: usize = 128 << 20;

/// One connection to another node's Kafka listener.
#[derive(Debug)]
pub(crate) struct PeerConnection {
    addr: String,
    client_id: String,
    conn: Option<TcpStream>,
    correlation: i32,
}

impl PeerConnection {
    pub(crate) fn new(addr: String, client_id: String) -> PeerConnection {
        PeerConnection {
            addr,
            client_id,
            conn: None,
            correlation: 0,
        }
    }

    /// Sends `request` as `api` `version` and decodes the answer; any failure drops the
    /// connection.
    pub(crate) async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, String> {
        let result = tokio::time::timeout(timeout, self.call_inner(api, version, request)).await;
        match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(format!("no answer within {timeout:?}"))
            }
        }
    }

    async fn call_inner<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<Resp, String> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
            let _ = s.set_nodelay(true);
            self.conn = Some(s);
        }
        self.correlation = self.correlation.wrapping_add(1);
        let mut buf = BytesMut::with_capacity(256);
        buf.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_string(self.client_id.clone())))
            .encode(&mut buf, api.request_header_version(version))
            .map_err(|e| e.to_string())?;
        request
            .encode(&mut buf, version)
            .map_err(|e| e.to_string())?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        let conn = self.conn.as_mut().expect("connected");
        conn.write_all(&buf).await.map_err(|e| e.to_string())?;
        let len = conn.read_i32().await.map_err(|e| e.to_string())?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| (4..=MAX_ANSWER).contains(l))
            .ok_or_else(|| format!("an answer of {len} bytes"))?;
        let mut answer = vec![0u8; len];
        conn.read_exact(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Bytes::from(answer);
        let header = ResponseHeader::decode(&mut answer, api.response_header_version(version))
            .map_err(|e| e.to_string())?;
        if header.correlation_id != self.correlation {
            return Err(format!(
                "answer {} to request {}",
                header.correlation_id, self.correlation
            ));
        }
        let resp = Resp::decode(&mut answer, version).map_err(|e| e.to_string())?;
        let _ = answer.remaining();
        Ok(resp)
    }
}
