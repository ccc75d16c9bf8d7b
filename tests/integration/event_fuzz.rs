//! Fuzzing the event log's value format (format byte | crc32 | prost Event)
//! and the projection: arbitrary bytes never panic the decoder, and any
//! Event prost accepts (unknown fields, unknown enum values, oversized
//! strings and numbers, payloads of the wrong pipe) folds without panic.

use pgpipe::domain::projection::Projection;
use pgpipe::proto::Event;
use pgpipe::store::event_log::decode_record;
use proptest::prelude::*;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};

/// A record as the log frames it, around any payload bytes.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = vec![1u8];
    v.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// One protobuf field with a random number and a well-formed value of a
/// random wire type (so prost gets past the framing and into the fields).
#[derive(Debug, Clone)]
enum Field {
    Varint(u32, u64),
    Fixed32(u32, u32),
    Fixed64(u32, u64),
    Text(u32, String),
    Bytes(u32, Vec<u8>),
    Message(u32, Vec<Field>),
}

fn encode_fields(fields: &[Field], buf: &mut Vec<u8>) {
    for f in fields {
        match f {
            Field::Varint(n, v) => {
                encode_key(*n, WireType::Varint, buf);
                encode_varint(*v, buf);
            }
            Field::Fixed32(n, v) => {
                encode_key(*n, WireType::ThirtyTwoBit, buf);
                buf.extend_from_slice(&v.to_le_bytes());
            }
            Field::Fixed64(n, v) => {
                encode_key(*n, WireType::SixtyFourBit, buf);
                buf.extend_from_slice(&v.to_le_bytes());
            }
            Field::Text(n, s) => {
                encode_key(*n, WireType::LengthDelimited, buf);
                encode_varint(s.len() as u64, buf);
                buf.extend_from_slice(s.as_bytes());
            }
            Field::Bytes(n, b) => {
                encode_key(*n, WireType::LengthDelimited, buf);
                encode_varint(b.len() as u64, buf);
                buf.extend_from_slice(b);
            }
            Field::Message(n, inner) => {
                let mut body = Vec::new();
                encode_fields(inner, &mut body);
                encode_key(*n, WireType::LengthDelimited, buf);
                encode_varint(body.len() as u64, buf);
                buf.extend_from_slice(&body);
            }
        }
    }
}

/// Field numbers: mostly the ones the messages use, sometimes unknown ones
/// up to the protobuf maximum.
fn field_no() -> impl Strategy<Value = u32> {
    prop_oneof![
        8 => 1u32..12,
        1 => 12u32..40,
        1 => 1000u32..=536_870_911,
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-z0-9_.\"]{0,16}",
        1 => any::<String>(),
        // Oversized: far past any name limit the API enforces.
        1 => (0usize..100_000).prop_map(|n| "x".repeat(n)),
    ]
}

fn scalar() -> impl Strategy<Value = Field> {
    prop_oneof![
        (
            field_no(),
            prop_oneof![Just(u64::MAX), Just(0u64), any::<u64>(), 0u64..10]
        )
            .prop_map(|(n, v)| Field::Varint(n, v)),
        (field_no(), any::<u32>()).prop_map(|(n, v)| Field::Fixed32(n, v)),
        (field_no(), any::<u64>()).prop_map(|(n, v)| Field::Fixed64(n, v)),
        (field_no(), text()).prop_map(|(n, s)| Field::Text(n, s)),
        (field_no(), proptest::collection::vec(any::<u8>(), 0..32))
            .prop_map(|(n, b)| Field::Bytes(n, b)),
    ]
}

fn fields() -> impl Strategy<Value = Vec<Field>> {
    let leaf = scalar();
    let tree = leaf.prop_recursive(3, 24, 6, |inner| {
        (field_no(), proptest::collection::vec(inner, 0..6))
            .prop_map(|(n, fs)| Field::Message(n, fs))
    });
    proptest::collection::vec(tree, 0..8)
}

/// An Event on the wire: header fields from a small set of pipes (so events
/// meet each other in the projection), one payload of a random kind with a
/// random body, and unknown fields.
fn event_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        1u64..50,
        prop_oneof![Just("a"), Just("b"), Just("")],
        prop_oneof![Just("id-1"), Just("id-2"), Just("id-3"), Just("")],
        any::<u64>(),
        10u32..=30,
        fields(),
        fields(),
    )
        .prop_map(|(seq, name, id, version, kind, body, unknown)| {
            let mut buf = Vec::new();
            encode_fields(
                &[
                    Field::Varint(1, seq),
                    Field::Text(2, name.into()),
                    Field::Text(3, id.into()),
                    Field::Varint(4, version),
                    Field::Message(kind, body),
                ],
                &mut buf,
            );
            let unknown: Vec<Field> = unknown
                .into_iter()
                .filter(|f| match f {
                    // Keep the header intact; everything else is fair game.
                    Field::Varint(n, _)
                    | Field::Fixed32(n, _)
                    | Field::Fixed64(n, _)
                    | Field::Text(n, _)
                    | Field::Bytes(n, _)
                    | Field::Message(n, _) => *n > 6,
                })
                .collect();
            encode_fields(&unknown, &mut buf);
            buf
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3_000))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_record(&bytes);
        // With a valid frame too, so prost sees the bytes.
        let _ = decode_record(&frame(&bytes));
    }

    #[test]
    fn a_flipped_bit_in_a_record_is_refused_not_misread(
        seq in 1u64..1000,
        name in "[a-z]{1,10}",
        pos in any::<usize>(),
        bit in 0u8..8,
    ) {
        let e = Event { seq, pipe_name: name, ..Default::default() };
        let mut rec = frame(&e.encode_to_vec());
        let i = pos % rec.len();
        rec[i] ^= 1 << bit;
        prop_assert!(decode_record(&rec).is_err());
    }

}

proptest! {
    // Fewer cases: each is up to 30 events, some of them 100 kB.
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn any_decodable_event_folds_through_the_projection(events in proptest::collection::vec(event_bytes(), 1..30)) {
        let mut p = Projection::default();
        for bytes in &events {
            // Through the log's own decoder, as replay does it.
            if let Ok(e) = decode_record(&frame(bytes)) {
                p.apply(&e);
                let _ = p.list(true, &Default::default());
                let _ = p.by_name(&e.pipe_name);
                let _ = pgpipe::domain::projection::event_kind(&e);
            }
        }
    }
}

/// The stored record of an event of pipe "a" (incarnation "id-1") at
/// `version`, encoded field by field with `rest` after the header.
fn event_of_a(version: u64, rest: Vec<Field>) -> Event {
    let mut fields = vec![
        Field::Varint(1, version),
        Field::Text(2, "a".into()),
        Field::Text(3, "id-1".into()),
        Field::Varint(4, version),
    ];
    fields.extend(rest);
    let mut buf = Vec::new();
    encode_fields(&fields, &mut buf);
    decode_record(&frame(&buf)).unwrap()
}

#[test]
fn unknown_fields_and_enum_values_are_accepted_and_ignored() {
    // A PipeDeleted with reason 99 (unknown enum) and an unknown field 77
    // inside the payload, plus unknown field 5000 on the Event.
    let created = event_of_a(
        1,
        vec![Field::Message(10, vec![Field::Text(1, "a".into())])],
    );
    let deleted = event_of_a(
        2,
        vec![
            Field::Message(11, vec![Field::Varint(1, 99), Field::Varint(77, 5)]),
            Field::Text(5000, "from a newer writer".into()),
        ],
    );
    let mut p = Projection::default();
    p.apply(&created);
    p.apply(&deleted);
    assert_eq!(p.head(), 2);
    assert!(p.by_name("a").is_some());
}
