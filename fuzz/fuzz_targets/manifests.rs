#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = controlplane::fuzzing::target("manifests").expect("a target of controlplane::fuzzing");
    let info = allocation_counter::measure(|| (target.run)(data));
    if let Some(why) = controlplane::fuzzing::over_bound(target, data.len(), info.bytes_max) {
        panic!("{why}");
    }
});
