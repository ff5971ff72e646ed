// A Rust program for the v0 demangling tests: generics, closures, trait
// impls, trait objects, const generics and non-ASCII (punycode) names, and
// one hot function that must show up as `rust_hot::work::checksum`.
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;

/// The CPU time of this thread (the samples count CPU time, so the program
/// measures the same: a busy machine does not skew its split).
fn cpu_now() -> f64 {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.sec as f64 + ts.nsec as f64 * 1e-9
}

pub mod work {
    /// The hot loop: the test expects most samples here.
    #[inline(never)]
    pub fn checksum(data: &[u64], rounds: u64) -> u64 {
        let mut h = 0xcbf29ce484222325u64;
        for r in 0..rounds {
            for &x in data {
                h = (h ^ x.wrapping_add(r)).wrapping_mul(0x100000001b3);
                h = h.rotate_left(7);
            }
        }
        h
    }

    pub struct Grid<const N: usize> {
        pub cells: [u32; N],
    }

    impl<const N: usize> Grid<N> {
        #[inline(never)]
        pub fn total(&self) -> u64 {
            self.cells.iter().map(|&c| c as u64).sum()
        }
    }
}

pub trait Shape {
    fn area(&self) -> f64;
}

pub struct Square(pub f64);
pub struct Circle(pub f64);

impl Shape for Square {
    #[inline(never)]
    fn area(&self) -> f64 { self.0 * self.0 }
}

impl Shape for Circle {
    #[inline(never)]
    fn area(&self) -> f64 { 3.14159 * self.0 * self.0 }
}

#[inline(never)]
fn generic_sum<T: Copy + Into<f64>>(items: &[T]) -> f64 {
    items.iter().map(|&x| x.into()).sum()
}

pub mod größe {
    /// The second hot function (a non-ASCII name: punycode in the symbol).
    #[inline(never)]
    pub fn maß(x: u64) -> u64 {
        let mut v = x | 1;
        for _ in 0..(x % 7 + 1) * 1000 {
            v ^= v << 13;
            v ^= v >> 7;
            v ^= v << 17;
        }
        v
    }
}

fn main() {
    let start = cpu_now();
    let rounds: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3000);
    let data: Vec<u64> = (0..10_000u64).collect();
    let shapes: Vec<Box<dyn Shape>> = vec![Box::new(Square(2.0)), Box::new(Circle(1.0))];
    let area: f64 = shapes.iter().map(|s| s.area()).sum();
    let grid = work::Grid::<4> { cells: [1, 2, 3, 4] };
    let mut names: HashMap<String, u64> = HashMap::new();
    let mut text = String::new();
    for i in 0..100u64 {
        text.clear();
        write!(text, "item-{}", i).unwrap();
        *names.entry(text.clone()).or_insert(0) += größe::maß(i);
    }
    let f32s = [1.0f32, 2.5];
    let sum = generic_sum(&f32s) + generic_sum(&[1u8, 2, 3]);
    // The program's own measurement of where its CPU time goes, printed for
    // the test to compare with.
    let t0 = cpu_now();
    let h = work::checksum(black_box(&data), black_box(rounds));
    let t1 = cpu_now();
    let mut m = 0u64;
    for i in 0..rounds * 4 {
        m ^= größe::maß(black_box(i));
    }
    let t2 = cpu_now();
    println!("{} {} {} {} {} {}", h, m, area, grid.total(), names.len(), sum);
    eprintln!("checksum_s={:.6} mass_s={:.6} total_s={:.6}", t1 - t0, t2 - t1, t2 - start);
}
