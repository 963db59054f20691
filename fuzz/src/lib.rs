//! The one harness every fuzz target runs (`fuzz_targets/NAME.rs` names its target):
//! the parser of `controlplane::fuzzing` on the input, its allocation measured on this
//! thread (`allocation-counter`), a panic or an allocation over the target's bound a finding.

/// Runs target `name` on `data`; panics on a finding.
pub fn run(name: &str, data: &[u8]) {
    let target = controlplane::fuzzing::target(name).expect("a target of controlplane::fuzzing");
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
}
