//! Writes the Helm chart `charts/lanyard/` from the install's one source.
//! Run from the workspace: `cargo run -p lanyard-chart --example generate`.

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(lanyard_chart::CHART_NAME);
    let _ = std::fs::remove_dir_all(dir.join("templates"));
    for (path, text) in lanyard_chart::chart_files() {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("chart files are in the chart"))
            .expect("create chart directories");
        std::fs::write(&path, text).expect("write chart file");
    }
    println!("wrote {}", dir.display());
}
