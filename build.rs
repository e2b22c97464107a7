//! Rebuilds when a migration changes: `sqlx::migrate!` embeds the files at compile
//! time, and stable Rust does not track them by itself.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
