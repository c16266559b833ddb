// No console window behind the app on Windows release builds.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() {
    if let Err(e) = likeness_app::run() {
        eprintln!("likeness-app: {e:#}");
        std::process::exit(1);
    }
}
