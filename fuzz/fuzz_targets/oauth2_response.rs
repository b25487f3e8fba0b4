#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| token_agent_fuzz::oauth2_response(data));
