//! The first-run tuning marks: per device and kind of work, kept in the kernel cache folder.

use likeness_models::device::DeviceChoice;
use likeness_models::device::tuning::needs_tuning;

#[cfg(feature = "autotune")]
#[test]
fn marks_are_per_device_and_work_and_survive_a_restart() {
    use likeness_models::device::tuning::{mark_tuned, marks_file};
    let dir = std::env::temp_dir().join(format!("likeness-tuning-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // This test binary's only test: the variable is read by every call below.
    unsafe { std::env::set_var("LIKENESS_KERNEL_CACHE", dir.join("kernels")) };
    assert_eq!(marks_file(), dir.join("kernels").join("tuned.txt"));

    let work = "dreambooth /models/sd15 512px batch 1 Bf16";
    assert!(needs_tuning(DeviceChoice::Cuda, work));
    assert!(
        !needs_tuning(DeviceChoice::Cpu, work),
        "the CPU has nothing to tune"
    );
    mark_tuned(DeviceChoice::Cuda, work).unwrap();
    assert!(!needs_tuning(DeviceChoice::Cuda, work));
    assert!(
        needs_tuning(DeviceChoice::Wgpu, work),
        "another device tunes again"
    );
    assert!(needs_tuning(
        DeviceChoice::Cuda,
        "dreambooth /models/sd15 768px batch 1 Bf16"
    ));

    // A second mark keeps the first; line breaks in a description cannot forge lines.
    mark_tuned(DeviceChoice::Wgpu, "gallery\nCuda x").unwrap();
    assert!(!needs_tuning(DeviceChoice::Wgpu, "gallery\nCuda x"));
    assert!(needs_tuning(DeviceChoice::Cuda, "x"));
    assert!(!needs_tuning(DeviceChoice::Cuda, work));
    let text = std::fs::read_to_string(marks_file()).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    // Marking the CPU writes nothing; no temporary files are left.
    mark_tuned(DeviceChoice::Cpu, "anything").unwrap();
    assert_eq!(std::fs::read_to_string(marks_file()).unwrap(), text);
    let names: Vec<_> = std::fs::read_dir(dir.join("kernels"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["tuned.txt"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A build without Burn's autotune tunes nothing, so it never shows the notice.
#[cfg(not(feature = "autotune"))]
#[test]
fn without_autotune_nothing_needs_tuning() {
    let work = "dreambooth /models/sd15 512px batch 1 Bf16";
    assert!(!needs_tuning(DeviceChoice::Cuda, work));
    assert!(!needs_tuning(DeviceChoice::Wgpu, work));
}
