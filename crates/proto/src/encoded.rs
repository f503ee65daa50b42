//! Messages encoded before they are handed to tonic, and sent as they are.
//!
//! A snapshot of a service's 100,000 assignments is the same for every watcher of that service:
//! a server encodes it once and hands each watcher's stream a reference to the bytes
//! ([`EncodedUpdate`]). A `RouteBatch` answer is written field by field from the decisions'
//! borrowed names ([`RouteBatchWriter`]), without an owned copy of each name first. tonic sends
//! messages through [`prost::Message`], so the bytes are wrapped in a message whose encoding is
//! those bytes. The servers in [`crate::shared`] send these types; the wire format is the
//! message's own, so clients decode them as [`crate::v1::AssignmentUpdate`] and
//! [`crate::v1::RouteBatchResponse`].

use std::fmt;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{
    DecodeContext, WireType, decode_varint, encode_key, encode_varint, encoded_len_varint, fixed32,
    fixed64, key_len, skip_field,
};
use prost::{DecodeError, Message};

use crate::v1::{AssignmentUpdate, RouteBatchResponse};

/// The encoding of an `M`; cloning it shares the bytes.
pub struct Encoded<M> {
    bytes: Bytes,
    message: PhantomData<fn() -> M>,
}

/// An encoded `AssignmentUpdate`.
pub type EncodedUpdate = Encoded<AssignmentUpdate>;

/// An encoded `RouteBatchResponse` (see [`RouteBatchWriter`]).
pub type EncodedRouteBatch = Encoded<RouteBatchResponse>;

impl<M> Encoded<M> {
    fn from_bytes(bytes: Bytes) -> Self {
        Encoded {
            bytes,
            message: PhantomData,
        }
    }

    /// Returns the encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl<M: Message + Default> Encoded<M> {
    /// Encodes a message.
    pub fn new(message: &M) -> Self {
        Self::from_bytes(Bytes::from(message.encode_to_vec()))
    }

    /// Decodes the message.
    pub fn to_message(&self) -> Result<M, DecodeError> {
        M::decode(self.as_bytes())
    }
}

impl<M> fmt::Debug for Encoded<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Encoded").field(&self.bytes).finish()
    }
}

impl<M> Clone for Encoded<M> {
    fn clone(&self) -> Self {
        Self::from_bytes(self.bytes.clone())
    }
}

impl<M> Default for Encoded<M> {
    fn default() -> Self {
        Self::from_bytes(Bytes::new())
    }
}

impl<M> PartialEq for Encoded<M> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl<M> Eq for Encoded<M> {}

impl<M> Message for Encoded<M> {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.bytes);
    }

    /// Keeps each field as it came, so a decoded message encodes to the same bytes.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // The bytes so far, without a copy when nothing else holds them (as while decoding).
        let mut field = std::mem::take(&mut self.bytes)
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        encode_key(tag, wire_type, &mut field);
        match wire_type {
            WireType::Varint => encode_varint(decode_varint(buf)?, &mut field),
            WireType::SixtyFourBit => {
                let mut value = 0;
                fixed64::merge(wire_type, &mut value, buf, ctx)?;
                field.put_u64_le(value);
            }
            WireType::ThirtyTwoBit => {
                let mut value = 0;
                fixed32::merge(wire_type, &mut value, buf, ctx)?;
                field.put_u32_le(value);
            }
            WireType::LengthDelimited => {
                let mut value: Vec<u8> = Vec::new();
                prost::encoding::bytes::merge(wire_type, &mut value, buf, ctx)?;
                encode_varint(value.len() as u64, &mut field);
                field.put_slice(&value);
            }
            // No field of these messages is a group: skipped, as prost skips fields it does
            // not know.
            WireType::StartGroup | WireType::EndGroup => {
                return skip_field(wire_type, tag, buf, ctx);
            }
        }
        self.bytes = field.freeze();
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    fn clear(&mut self) {
        self.bytes = Bytes::new();
    }
}

/// The bytes gRPC puts before each message: a flag (0: not compressed) and the length.
pub const GRPC_PREFIX_LEN: usize = 5;

/// An `M` as one gRPC message on the wire: the prefix, then the encoding. A server writes these
/// bytes to a stream as they are, so a message built once for many streams is never copied
/// into each stream's buffer: cloning a frame shares the bytes.
pub struct GrpcFrame<M> {
    bytes: Bytes,
    message: PhantomData<fn() -> M>,
}

/// A message longer than a gRPC frame can say (its length is 32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTooLarge(pub usize);

impl fmt::Display for FrameTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a message of {} bytes is over the 4 GiB a gRPC message may take",
            self.0
        )
    }
}

impl std::error::Error for FrameTooLarge {}

impl<M: Message + Default> GrpcFrame<M> {
    /// Encodes a message as one frame (uncompressed).
    pub fn new(message: &M) -> Result<Self, FrameTooLarge> {
        let len = message.encoded_len();
        let prefix = u32::try_from(len).map_err(|_| FrameTooLarge(len))?;
        let mut bytes = BytesMut::with_capacity(GRPC_PREFIX_LEN + len);
        bytes.put_u8(0);
        bytes.put_u32(prefix);
        message.encode_raw(&mut bytes);
        Ok(GrpcFrame {
            bytes: bytes.freeze(),
            message: PhantomData,
        })
    }

    /// Decodes the message.
    pub fn to_message(&self) -> Result<M, DecodeError> {
        M::decode(self.as_bytes())
    }

    /// The message alone, as tonic sends it (shares the bytes).
    pub fn to_encoded(&self) -> Encoded<M> {
        Encoded::from_bytes(self.bytes.slice(GRPC_PREFIX_LEN..))
    }
}

impl<M> GrpcFrame<M> {
    /// The whole frame, prefix included (shares the bytes).
    pub fn frame(&self) -> Bytes {
        self.bytes.clone()
    }

    /// The message's encoding, without the prefix.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(GRPC_PREFIX_LEN..).unwrap_or_default()
    }

    /// Bytes of the whole frame.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the frame holds no bytes at all (never true of a built frame).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl<M> fmt::Debug for GrpcFrame<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("GrpcFrame").field(&self.bytes).finish()
    }
}

impl<M> Clone for GrpcFrame<M> {
    fn clone(&self) -> Self {
        GrpcFrame {
            bytes: self.bytes.clone(),
            message: PhantomData,
        }
    }
}

impl<M> PartialEq for GrpcFrame<M> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl<M> Eq for GrpcFrame<M> {}

/// One decision of a batch, as `RouteResponse` carries it.
#[derive(Debug, Clone, Copy)]
pub struct RouteAnswer<'a> {
    /// The instance's id.
    pub instance_id: &'a str,
    /// The instance's address.
    pub address: &'a str,
    /// The version.
    pub version: &'a str,
    /// Why that version.
    pub source: &'a str,
    /// The revision that answered.
    pub revision: u64,
}

/// Writes a `RouteBatchResponse` one result at a time, in the bytes prost would encode.
#[derive(Debug)]
pub struct RouteBatchWriter {
    buf: BytesMut,
}

/// `RouteBatchResponse.results`, `RouteResult.route`, `RouteResult.error`.
const RESULTS: u32 = 1;
const ROUTE: u32 = 1;
const ERROR: u32 = 2;

impl RouteBatchWriter {
    /// Returns a writer with room for about `results` results.
    pub fn with_capacity(results: usize) -> Self {
        RouteBatchWriter {
            buf: BytesMut::with_capacity(results.saturating_mul(96)),
        }
    }

    /// Appends a decision.
    pub fn route(&mut self, answer: &RouteAnswer<'_>) {
        let fields = [
            answer.instance_id,
            answer.address,
            answer.version,
            answer.source,
        ];
        let mut len: usize = fields
            .iter()
            .enumerate()
            .map(|(i, value)| string_len(i as u32 + 1, value))
            .sum();
        if answer.revision != 0 {
            len += key_len(5) + encoded_len_varint(answer.revision);
        }
        self.open_result(ROUTE, len);
        for (i, value) in fields.iter().enumerate() {
            put_string(i as u32 + 1, value, &mut self.buf);
        }
        if answer.revision != 0 {
            encode_key(5, WireType::Varint, &mut self.buf);
            encode_varint(answer.revision, &mut self.buf);
        }
    }

    /// Appends a refusal: the status a unary `Route` would have answered.
    pub fn error(&mut self, code: i32, message: &str) {
        // An int32 is encoded as its sign-extended 64 bits, as prost does.
        let code = i64::from(code) as u64;
        let mut len = string_len(2, message);
        if code != 0 {
            len += key_len(1) + encoded_len_varint(code);
        }
        self.open_result(ERROR, len);
        if code != 0 {
            encode_key(1, WireType::Varint, &mut self.buf);
            encode_varint(code, &mut self.buf);
        }
        put_string(2, message, &mut self.buf);
    }

    /// Ends the batch with the revision that answered it.
    pub fn finish(mut self, revision: u64) -> EncodedRouteBatch {
        if revision != 0 {
            encode_key(2, WireType::Varint, &mut self.buf);
            encode_varint(revision, &mut self.buf);
        }
        Encoded::from_bytes(self.buf.freeze())
    }

    /// Writes a result's heading: `results` holding a `RouteResult` whose one field `tag`
    /// holds `len` bytes.
    fn open_result(&mut self, tag: u32, len: usize) {
        let result_len = key_len(tag) + encoded_len_varint(len as u64) + len;
        encode_key(RESULTS, WireType::LengthDelimited, &mut self.buf);
        encode_varint(result_len as u64, &mut self.buf);
        encode_key(tag, WireType::LengthDelimited, &mut self.buf);
        encode_varint(len as u64, &mut self.buf);
    }
}

/// The encoded length of a string field (nothing when empty, as proto3 leaves it out).
fn string_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(value.len() as u64) + value.len()
    }
}

fn put_string(tag: u32, value: &str, buf: &mut BytesMut) {
    if !value.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(value.len() as u64, buf);
        buf.put_slice(value.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{
        Assignment, AssignmentKey, RouteError, RouteResponse, RouteResult, route_result,
    };

    fn update() -> AssignmentUpdate {
        AssignmentUpdate {
            revision: 42,
            snapshot: true,
            upserts: vec![Assignment {
                tenant_id: "acme".into(),
                service: "api".into(),
                version: "v2".into(),
                source: "pin".into(),
                ..Assignment::default()
            }],
            removals: vec![AssignmentKey {
                tenant_id: "globex".into(),
                service: "api".into(),
            }],
            partial: true,
            cause: "SetTenantVersion".into(),
            history: "h-1".into(),
            versions: vec![crate::v1::VersionInstances {
                service: "api".into(),
                version: "v2".into(),
                instances: vec![crate::v1::InstanceAddress {
                    instance_id: "i-1".into(),
                    ..Default::default()
                }],
            }],
        }
    }

    #[test]
    fn an_encoded_update_is_sent_as_the_update_and_decodes_back() {
        let update = update();
        let encoded = EncodedUpdate::new(&update);
        // What goes on the wire (through the message trait, as tonic sends it) is the update.
        assert_eq!(encoded.encode_to_vec(), update.encode_to_vec());
        assert_eq!(encoded.encoded_len(), update.encoded_len());
        assert_eq!(
            AssignmentUpdate::decode(&encoded.encode_to_vec()[..]),
            Ok(update.clone())
        );
        // Received as an EncodedUpdate, it keeps every field.
        let received =
            <EncodedUpdate as Message>::decode(&update.encode_to_vec()[..]).expect("decodes");
        assert_eq!(received, encoded);
        assert_eq!(received.to_message(), Ok(update));
        // Clones share the bytes.
        assert_eq!(
            encoded.clone().as_bytes().as_ptr(),
            encoded.as_bytes().as_ptr()
        );
    }

    #[test]
    fn a_frame_is_the_prefix_then_the_message() {
        let update = update();
        let frame = GrpcFrame::new(&update).expect("fits");
        let encoded = update.encode_to_vec();
        let bytes = frame.frame();
        // Not compressed, then the length big-endian, as every gRPC implementation reads it.
        assert_eq!(bytes[0], 0);
        assert_eq!(
            u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize,
            encoded.len()
        );
        assert_eq!(&bytes[GRPC_PREFIX_LEN..], &encoded[..]);
        assert_eq!(frame.len(), GRPC_PREFIX_LEN + encoded.len());
        assert_eq!(frame.as_bytes(), &encoded[..]);
        assert_eq!(frame.to_message(), Ok(update.clone()));
        // The message alone, for tonic, and clones: the same bytes, not copies.
        let alone = frame.to_encoded();
        assert_eq!(alone.encode_to_vec(), encoded);
        assert_eq!(alone.as_bytes().as_ptr(), frame.as_bytes().as_ptr());
        assert_eq!(frame.clone().frame().as_ptr(), bytes.as_ptr());
        // An empty message is a frame of its prefix alone.
        let empty = GrpcFrame::new(&AssignmentUpdate::default()).expect("fits");
        assert_eq!(&empty.frame()[..], &[0, 0, 0, 0, 0]);
        assert!(empty.as_bytes().is_empty() && !empty.is_empty());
    }

    #[test]
    fn a_written_batch_is_the_batch_prost_encodes() {
        let answers = [
            RouteAnswer {
                instance_id: "i-1",
                address: "10.0.0.1:8080",
                version: "v2",
                source: "experiment:e-1:b",
                revision: 300,
            },
            // Empty fields are left out, as proto3 does.
            RouteAnswer {
                instance_id: "",
                address: "x",
                version: "",
                source: "pin",
                revision: 0,
            },
        ];
        let long = "m".repeat(300);
        let mut writer = RouteBatchWriter::with_capacity(1);
        writer.route(&answers[0]);
        writer.error(5, "tenant t not found");
        writer.route(&answers[1]);
        writer.error(-1, &long);
        writer.error(0, "");
        let written = writer.finish(300);
        let owned = |a: &RouteAnswer<'_>| RouteResult {
            result: Some(route_result::Result::Route(RouteResponse {
                instance_id: a.instance_id.into(),
                address: a.address.into(),
                version: a.version.into(),
                source: a.source.into(),
                revision: a.revision,
            })),
        };
        let error = |code: i32, message: &str| RouteResult {
            result: Some(route_result::Result::Error(RouteError {
                code,
                message: message.into(),
            })),
        };
        let expected = RouteBatchResponse {
            results: vec![
                owned(&answers[0]),
                error(5, "tenant t not found"),
                owned(&answers[1]),
                error(-1, &long),
                error(0, ""),
            ],
            revision: 300,
        };
        assert_eq!(written.as_bytes(), &expected.encode_to_vec()[..]);
        assert_eq!(written.to_message(), Ok(expected));
        assert_eq!(
            RouteBatchWriter::with_capacity(0).finish(0).as_bytes(),
            &RouteBatchResponse::default().encode_to_vec()[..]
        );
    }
}
