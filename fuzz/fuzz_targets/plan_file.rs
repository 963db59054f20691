#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentctl_fuzz::run("plan_file", data));
