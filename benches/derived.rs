//! Derived credentials inside the process: what one account costs when a login first names a
//! username (one HMAC-SHA-256 per secret, the allocations that stay in the cache), a cache hit,
//! and a PLAIN check against every candidate. Run: `cargo bench --bench derived`; the allocation
//! columns (divan's AllocProfiler) give the bytes a cache entry holds.

use crbroker::auth::{verify_plain, DerivedAccounts, DerivedSecret};

#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

fn main() {
    divan::main();
}

/// A source with `secrets` secrets (a rotation in progress has two) and a cache large enough
/// never to evict during a run.
fn source(secrets: u8) -> DerivedAccounts {
    let secrets = (0..secrets)
        .map(|i| DerivedSecret::new(&format!("s{i}"), &[i + 1; 32]).unwrap())
        .collect();
    DerivedAccounts::new(secrets, ["cpe-"], 100_000_000)
}

/// A cache miss: the account of a username seen for the first time, made and cached.
#[divan::bench(args = [1, 2])]
fn first_lookup(bencher: divan::Bencher, secrets: u8) {
    let derived = source(secrets);
    let mut i = 0u64;
    bencher
        .with_inputs(|| {
            i += 1;
            format!("cpe-{i:09}")
        })
        .bench_local_refs(|name| derived.account(name).is_some());
}

/// A cache hit: a CPE that logged in before.
#[divan::bench(args = [1, 2])]
fn cached_lookup(bencher: divan::Bencher, secrets: u8) {
    let derived = source(secrets);
    derived.account("cpe-000000001").unwrap();
    bencher.bench_local(|| derived.account("cpe-000000001").is_some());
}

/// PLAIN against a cached account, with the password of its last candidate (every candidate
/// is compared anyway).
#[divan::bench(args = [1, 2])]
fn plain_check(bencher: divan::Bencher, secrets: u8) {
    let derived = source(secrets);
    let account = derived.account("cpe-000000001").unwrap();
    let password = derived.secrets().last().unwrap().password("cpe-000000001");
    bencher.bench_local(|| verify_plain(&account, password.as_bytes()));
}
