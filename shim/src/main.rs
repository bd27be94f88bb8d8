//! `containerd-shim-berth-v2`: see [`berth_shim`].

fn main() {
    std::process::exit(berth_shim::run());
}
