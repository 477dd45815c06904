#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| entente::fuzzing::taxii_request(data));
