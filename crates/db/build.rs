//! The migrations are embedded at compile time (`embed_migrations!`), which
//! tracks the files it read but not new ones: a migration added to either
//! folder must rebuild this crate.

fn main() {
    println!("cargo::rerun-if-changed=../../migrations");
}
