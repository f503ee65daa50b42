//! An `AssignmentUpdate` encoded once and sent as it is.
//!
//! A snapshot of a service's 100,000 assignments is the same for every watcher of that service:
//! a server encodes it once and hands each watcher's stream a reference to the bytes. tonic sends
//! a stream's messages through [`prost::Message`], so the bytes are wrapped in a message whose
//! encoding is those bytes. The servers in [`crate::shared`] stream this type; the wire format
//! is `AssignmentUpdate`'s, so clients decode it as [`crate::v1::AssignmentUpdate`].

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{
    DecodeContext, WireType, decode_varint, encode_key, encode_varint, fixed32, fixed64, skip_field,
};
use prost::{DecodeError, Message};

use crate::v1::AssignmentUpdate;

/// An encoded `AssignmentUpdate`; cloning it shares the bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedUpdate(Bytes);

impl EncodedUpdate {
    /// Encodes an update.
    pub fn new(update: &AssignmentUpdate) -> EncodedUpdate {
        EncodedUpdate(Bytes::from(update.encode_to_vec()))
    }

    /// Returns the encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Decodes the update.
    pub fn to_update(&self) -> Result<AssignmentUpdate, DecodeError> {
        AssignmentUpdate::decode(self.as_bytes())
    }
}

impl Message for EncodedUpdate {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    /// Keeps each field as it came, so a decoded `EncodedUpdate` encodes to the same bytes.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // The bytes so far, without a copy when nothing else holds them (as while decoding).
        let mut field = std::mem::take(&mut self.0)
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
            // No field of an update is a group: skipped, as prost skips fields it does not know.
            WireType::StartGroup | WireType::EndGroup => {
                return skip_field(wire_type, tag, buf, ctx);
            }
        }
        self.0 = field.freeze();
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Assignment, AssignmentKey};

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
        assert_eq!(received.to_update(), Ok(update));
        // Clones share the bytes.
        assert_eq!(
            encoded.clone().as_bytes().as_ptr(),
            encoded.as_bytes().as_ptr()
        );
    }
}
