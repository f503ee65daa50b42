//! The codec of every greyrouter service: prost's, except that a message that does not decode
//! is the sender's fault.
//!
//! tonic's prost codec answers `INTERNAL` when a message is not valid protobuf (a string field
//! that is not UTF-8, a truncated field): a client would take that for a server bug and retry.
//! Here it is `INVALID_ARGUMENT`, naming what could not be decoded, so a server tells a caller
//! that sent garbage exactly that. (A client decoding a reply uses the same codec and reports a
//! reply that does not decode the same way.)

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// A [`tonic::codec::Codec`] for prost messages whose decoding errors are `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct Codec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder {
            inner: self.inner.decoder(),
            _message: PhantomData,
        }
    }
}

/// Decodes a prost message; a message that is not valid protobuf is `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct Decoder<U> {
    inner: ProstDecoder<U>,
    _message: PhantomData<U>,
}

impl<U: Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|err| {
            Status::invalid_argument(format!(
                "the message is not a valid {}: {err}",
                std::any::type_name::<U>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("message")
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
