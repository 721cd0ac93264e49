fn main() {
    static OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pgmon"));
    let mut ebpf = aya::Ebpf::load(OBJ).expect("load");
    for (name, p) in ebpf.programs_mut() { println!("{name} {:?}", p.prog_type()); }
}
