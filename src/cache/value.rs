//! What a cached answer is, and its one byte form for the shared tier. Everything that knows the
//! layout of a value in Redis is in this file: a change to `Stored` changes `encode`/`decode`
//! here and bumps `FORMAT`, which is part of every shared key, so daemons of two versions never
//! read each other's values.

use bytes::{BufMut, Bytes, BytesMut};

/// The version of the byte form below; part of the key prefix in the shared tier.
pub const FORMAT: u32 = 2;

/// A value larger than this is neither written to nor accepted from the shared tier.
pub const MAX_ENCODED_BYTES: usize = 8 << 20;

/// Leading bytes of every encoded value, so that a foreign value is refused at its first byte.
const MAGIC: &[u8; 4] = b"cdA2";

/// One run's answer in both dialects (`answer::Dialect`), so that a program sent raw and then as
/// a form runs once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The raw dialect's status and body.
    pub status: u16,
    pub body: Bytes,
    /// The playground dialect's body; its status is `answer::CACHED_PLAYGROUND_STATUS`.
    pub playground: Bytes,
}

/// Why a value read from the shared tier was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Invalid {
    TooLarge,
    Magic,
    Truncated,
    Status,
    Trailing,
}

/// `MAGIC`, the status (u16, big-endian), then each byte field as a u32 big-endian length and its
/// bytes.
pub fn encode(v: &Stored) -> Option<Bytes> {
    let len = MAGIC.len() + 2 + 4 + v.body.len() + 4 + v.playground.len();
    if len > MAX_ENCODED_BYTES {
        return None;
    }
    let mut out = BytesMut::with_capacity(len);
    out.put_slice(MAGIC);
    out.put_u16(v.status);
    out.put_u32(v.body.len() as u32);
    out.put_slice(&v.body);
    out.put_u32(v.playground.len() as u32);
    out.put_slice(&v.playground);
    Some(out.freeze())
}

pub fn decode(raw: Bytes) -> Result<Stored, Invalid> {
    if raw.len() > MAX_ENCODED_BYTES {
        return Err(Invalid::TooLarge);
    }
    let mut r = Reader(raw);
    if r.take(MAGIC.len())?[..] != MAGIC[..] {
        return Err(Invalid::Magic);
    }
    let status = u16::from_be_bytes(r.take(2)?[..].try_into().expect("two bytes"));
    if !(200..=599).contains(&status) {
        return Err(Invalid::Status);
    }
    let body = r.field()?;
    let playground = r.field()?;
    if !r.0.is_empty() {
        return Err(Invalid::Trailing);
    }
    Ok(Stored {
        status,
        body,
        playground,
    })
}

struct Reader(Bytes);

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, Invalid> {
        if self.0.len() < n {
            return Err(Invalid::Truncated);
        }
        Ok(self.0.split_to(n))
    }

    fn field(&mut self) -> Result<Bytes, Invalid> {
        let len = u32::from_be_bytes(self.take(4)?[..].try_into().expect("four bytes"));
        self.take(len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> Stored {
        Stored {
            status: 200,
            body: Bytes::from_static(br#"{"Errors":"","Events":[]}"#),
            playground: Bytes::from_static(br#"{"Errors":"","Events":[],"Status":0}"#),
        }
    }

    #[test]
    fn round_trips() {
        let v = stored();
        assert_eq!(decode(encode(&v).unwrap()), Ok(v));
        let empty = Stored {
            status: 400,
            body: Bytes::new(),
            playground: Bytes::new(),
        };
        assert_eq!(decode(encode(&empty).unwrap()), Ok(empty));
    }

    #[test]
    fn refuses_garbage() {
        let good = encode(&stored()).unwrap();
        assert_eq!(decode(Bytes::from_static(b"")), Err(Invalid::Truncated));
        assert_eq!(
            decode(Bytes::from_static(b"hello world")),
            Err(Invalid::Magic)
        );
        assert_eq!(
            decode(good.slice(..good.len() - 1)),
            Err(Invalid::Truncated)
        );
        let mut long = good.to_vec();
        long.push(b'x');
        assert_eq!(decode(long.into()), Err(Invalid::Trailing));
        let mut status = good.to_vec();
        status[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(decode(status.into()), Err(Invalid::Status));
        let huge = vec![0u8; MAX_ENCODED_BYTES + 1];
        assert_eq!(decode(huge.into()), Err(Invalid::TooLarge));
    }

    #[test]
    fn oversized_answers_are_not_encoded() {
        let v = Stored {
            status: 200,
            body: Bytes::from(vec![b'x'; MAX_ENCODED_BYTES]),
            playground: Bytes::new(),
        };
        assert!(encode(&v).is_none());
    }
}
