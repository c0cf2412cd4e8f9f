/*
 * lmas_* : exported wrappers for DPDK's static-inline functions and macros,
 * which bindgen cannot bind (they have no symbol in libdpdk). Each one is a
 * plain call-through; see shim.c.
 */
#ifndef LMAS_DPDK_SHIM_H
#define LMAS_DPDK_SHIM_H

#include <stdint.h>

struct rte_mbuf;
struct rte_mempool;
struct rte_ring;

uint16_t lmas_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t lmas_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);

struct rte_mbuf *lmas_pktmbuf_alloc(struct rte_mempool *mp);
int lmas_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned count);
void lmas_pktmbuf_free(struct rte_mbuf *m);
void lmas_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned count);
/* Start of the first segment's data, and its length. */
uint8_t *lmas_pktmbuf_data(struct rte_mbuf *m);
uint16_t lmas_pktmbuf_data_len(const struct rte_mbuf *m);
uint32_t lmas_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t lmas_pktmbuf_nb_segs(const struct rte_mbuf *m);
/* Room left after the data in the first segment. */
uint16_t lmas_pktmbuf_tailroom(const struct rte_mbuf *m);
/* Grows the data by len bytes; NULL if there is no room. */
uint8_t *lmas_pktmbuf_append(struct rte_mbuf *m, uint16_t len);

unsigned lmas_ring_enqueue_burst(struct rte_ring *r, void *const *objs, unsigned n);
unsigned lmas_ring_dequeue_burst(struct rte_ring *r, void **objs, unsigned n);
unsigned lmas_ring_count(const struct rte_ring *r);
unsigned lmas_ring_free_count(const struct rte_ring *r);

unsigned lmas_lcore_id(void);
uint64_t lmas_rdtsc(void);
int lmas_errno(void);

#endif
