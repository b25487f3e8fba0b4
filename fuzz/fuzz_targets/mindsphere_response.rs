#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| token_agent_fuzz::mindsphere_response(data));
