#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| token_agent_fuzz::xmlrpc_response(data));
