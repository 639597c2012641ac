//! Tauri's build step: reads tauri.conf.json and capabilities/, and generates the permissions
//! of the app's one command (`allow-api`), so a window may call only what its capability lists.

fn main() {
    // A release build (`--features custom-protocol`) embeds app/ui/dist when `app` compiles:
    // rebuild when the UI is rebuilt. Without the feature the window loads `devUrl` and the
    // dist folder is neither read nor needed.
    if std::env::var_os("CARGO_FEATURE_CUSTOM_PROTOCOL").is_some() {
        println!("cargo:rerun-if-changed=../ui/dist");
    }
    tauri_build::try_build(
        tauri_build::Attributes::new()
            .app_manifest(tauri_build::AppManifest::new().commands(&["api"])),
    )
    .expect("tauri-build: reading tauri.conf.json, capabilities/ and icons/");
}
