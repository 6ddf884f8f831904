//! Any bytes as what an AMQP client sends after the protocol header: every frame the
//! reader accepts is within frame_max, and every method or content-header payload goes
//! through the same decoders the connection uses. Never a panic, never a frame larger
//! than the bound.
#![no_main]

use herald_amqp::frame::{self, FrameReader, Read};
use libfuzzer_sys::fuzz_target;

/// The smallest frame_max a client may negotiate: the tightest bound to check.
const FRAME_MAX: usize = frame::FRAME_MIN_SIZE as usize;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut reader = FrameReader::new(data);
        for _ in 0..1_000 {
            match reader.next(FRAME_MAX).await {
                Ok(Read::Frame(raw)) => {
                    assert!(raw.payload.len() + frame::FRAME_OVERHEAD <= FRAME_MAX);
                    match raw.kind {
                        frame::FRAME_METHOD => {
                            if let Ok(method) = frame::decode_method(&raw.payload) {
                                // What the broker echoes must encode again.
                                let _ = frame::method(raw.channel, method);
                            }
                        }
                        frame::FRAME_HEADER => {
                            if let Ok(header) = frame::decode_content_header(&raw.payload) {
                                let _ = frame::encode_properties(&header.properties);
                            }
                        }
                        _ => {}
                    }
                }
                _ => break,
            }
        }
    });
});
