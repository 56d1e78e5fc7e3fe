//! The contract CI relies on: a missing input is a logged skip, and a failure under
//! SMELT_REQUIRE_INPUTS=1; SMELT_REQUIRE_GPU covers GPU skips only, SMELT_REQUIRE_AMX AMX ones. One test, since it sets
//! process-wide environment variables.

use smelt_testing::{input, skip, Need};

#[test]
fn skips_are_logged_and_fail_when_required() {
    let log = std::env::temp_dir().join(format!("smelt-skip-log-{}", std::process::id()));
    let _ = std::fs::remove_file(&log);
    std::env::set_var("SMELT_SKIP_LOG", &log);
    std::env::remove_var("SMELT_REQUIRE_INPUTS");
    std::env::remove_var("SMELT_REQUIRE_GPU");
    std::env::remove_var("SMELT_REQUIRE_AMX");

    assert_eq!(input("no/such/input"), None);
    skip(Need::Cpu, "no AVX-9000");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("SMELT-SKIP smelt-testing/require::skips_are_logged_and_fail_when_required: "),
        "{text}"
    );
    assert!(lines[0].contains("no/such/input missing (run scripts/fetch_inputs.sh)"), "{text}");
    assert!(lines[1].ends_with(": no AVX-9000"), "{text}");

    std::env::set_var("SMELT_REQUIRE_INPUTS", "1");
    let e = std::panic::catch_unwind(|| input("no/such/input")).unwrap_err();
    let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.starts_with(
            "SMELT_REQUIRE_INPUTS=1, but smelt-testing/require::skips_are_logged_and_fail_when_required would skip: "
        ),
        "{msg}"
    );
    // Other kinds stay skips under it; "0" means not required.
    skip(Need::Gpu, "no GPU");
    skip(Need::Cpu, "no AVX-9000");
    std::env::set_var("SMELT_REQUIRE_INPUTS", "0");
    assert_eq!(input("no/such/input"), None);
    std::env::set_var("SMELT_REQUIRE_GPU", "1");
    assert!(std::panic::catch_unwind(|| skip(Need::Gpu, "no GPU")).is_err());
    std::env::set_var("SMELT_REQUIRE_AMX", "1");
    assert!(std::panic::catch_unwind(|| skip(Need::Amx, "no AMX")).is_err());

    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 5);
    std::fs::remove_file(&log).unwrap();
}
