//! The safe layer against a real EAL (no hugepages, no PCI): mempool and
//! mbufs, an SP/SC ring, a null PMD port's bursts, and launching an lcore.
//! One test function, because an EAL can be initialised once per process.

use lmas_dpdk::{mbuf_ring, Eal, MbufBatch, Mempool, Port, PortConfig, BURST};

#[test]
fn eal_mempool_ring_port_and_lcores() {
    let prefix = format!("lmas-dpdk-test-{}", std::process::id());
    let args: Vec<String> = [
        "--no-huge",
        "-m",
        "256",
        "--no-pci",
        "--no-telemetry",
        "--log-level",
        "error",
        "--file-prefix",
        &prefix,
        "--lcores",
        "0@0,1@0",
        "--vdev=net_null0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let eal = match Eal::init(&args) {
        Ok(eal) => eal,
        Err(e) => {
            eprintln!("SKIP: cannot start a DPDK EAL here: {e}");
            return;
        }
    };
    assert!(Eal::init(&args).is_err(), "a second EAL init is refused");

    // Mempool and mbufs: append, write, read back; freed on drop.
    let pool = Mempool::new("test_pool", 1023, 0, 2048, -1).unwrap();
    let before = pool.available();
    let mut m = pool.alloc().unwrap();
    assert_eq!(pool.available(), before - 1);
    assert!(m.data().is_empty());
    m.append(5).unwrap().copy_from_slice(b"hello");
    assert_eq!(m.data(), b"hello");
    assert!(
        m.append(m.tailroom() + 1).is_none(),
        "no room is an error, not UB"
    );
    drop(m);
    assert_eq!(pool.available(), before);

    // Ring: order kept, overflow stays with the producer, leftovers freed on drop.
    let (mut tx, mut rx) = mbuf_ring("test_ring", 8, -1).unwrap();
    let mut batch = MbufBatch::new();
    for i in 0..8u8 {
        let mut m = pool.alloc().unwrap();
        m.append(1).unwrap()[0] = i;
        batch.push(m).map_err(|_| ()).unwrap();
    }
    assert_eq!(tx.enqueue(&mut batch), 7, "one slot of a ring stays empty");
    assert_eq!(batch.len(), 1);
    let mut out = MbufBatch::new();
    assert_eq!(rx.dequeue(&mut out), 7);
    for i in 0..7u8 {
        assert_eq!(out.pop().unwrap().data(), &[i]);
    }
    assert_eq!(tx.enqueue(&mut batch), 1);
    drop((tx, rx));
    assert_eq!(
        pool.available(),
        before,
        "queued mbufs are freed with the ring"
    );

    // A null PMD port: rx produces packets, tx consumes them.
    let port = Port::by_name("net_null0").unwrap();
    assert!(Port::by_name("net_nope9").is_err());
    let (mut rxq, mut txq) = port.start(&PortConfig::default(), pool).unwrap();
    let mut burst = MbufBatch::new();
    let n = rxq.rx_burst(&mut burst);
    assert!(n > 0 && n <= BURST, "null PMD delivers a burst ({n})");
    assert_eq!(txq.tx_burst(&mut burst), n);
    assert!(burst.is_empty());
    assert!(port.stats().tx_packets >= n as u64);
    port.stop();

    // Launch on a worker lcore and collect its return value.
    let workers = eal.worker_lcores();
    assert_eq!(workers, vec![1]);
    eal.launch(1, || 42).unwrap();
    assert_eq!(eal.wait(1), 42);
    assert!(lmas_dpdk::tsc_hz() > 0);
}
