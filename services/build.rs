//! Stamps the git commit into the version service's revision.

fn main() {
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
    println!("cargo:rerun-if-env-changed=BERTH_REVISION");
    if std::env::var_os("BERTH_REVISION").is_some() {
        return;
    }
    let rev = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok());
    if let Some(rev) = rev {
        println!("cargo:rustc-env=BERTH_REVISION={}", rev.trim());
    }
}
