//! The k3s stand-in binary (test fixture; see `installer_tests::standin`). The lab tests install
//! it on each lab node as `/usr/local/bin/k3s`.

fn main() {
    let code = installer_tests::standin::main(std::env::args().collect());
    std::process::exit(code);
}
