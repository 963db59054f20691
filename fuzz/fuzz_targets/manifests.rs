#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = controlplane::fuzzing::target("manifests").expect("a target of controlplane::fuzzing");
    // The panic is raised again outside `measure`, whose counter it would leave raised.
    let mut outcome = Ok(());
    let info = allocation_counter::measure(|| {
        outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (target.run)(data)));
    });
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    if let Some(why) = controlplane::fuzzing::over_bound(target, data.len(), info.bytes_max) {
        panic!("{why}");
    }
});
