//! End to end against a real virtio-fs back-end, virtiofsd 1.14 (`../shared/targets/virtiofsd.sh`,
//! one fresh process per scenario sharing the fresh directory `{fs_dir}`): the whole suite runs
//! as a user would run it, and the report says the fs data path works, with exactly the
//! departures the README writes up. Needs `../shared/targets/install.sh fs`; without it the test
//! fails, saying so.

#[path = "common/real_target.rs"]
#[allow(dead_code)]
mod common_real;

use common_real::{Run, run_suite};

#[test]
fn virtiofsd_runs_the_fs_data_path_and_fails_only_where_the_readme_says() {
    let run: Run = run_suite("fs", "virtiofsd.sh", "VHU_FS_DIR={fs_dir} ");
    run.assert_ran_at_least(25);
    run.assert_data_path_passed("fs/", 8);
    // README "virtiofsd": REM_MEM_REG matched on guest address and size only.
    run.assert_fails_exactly(&[("memory/rem-wrong-user-addr", "R-MEM-11")]);
    // The files the scenarios read were created in the directory the harness made.
    for id in [
        "fs/read-file",
        "fs/read-at-offset",
        "fs/large-read",
        "fs/getattr-file",
    ] {
        assert_eq!(run.outcome(id), "pass", "{id}: {}", run.text);
    }
    // CONFIG is not offered: the config check does not apply.
    assert_eq!(run.outcome("fs/config"), "skip", "{}", run.text);
}
