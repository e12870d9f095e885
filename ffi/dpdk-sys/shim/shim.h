/*
 * Out-of-line wrappers for DPDK's static inline hot-path functions (and the thread-local
 * rte_errno), which bindgen cannot bind because they have no symbol in the shared libraries.
 * Each keeps the semantics and argument order of the function it wraps.
 */
#ifndef NICPROXY_DPDK_SHIM_H
#define NICPROXY_DPDK_SHIM_H

#include <stddef.h>
#include <stdint.h>

struct rte_mbuf;
struct rte_mempool;

uint16_t nicproxy_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id,
				   struct rte_mbuf **rx_pkts, uint16_t nb_pkts);
uint16_t nicproxy_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id,
				   struct rte_mbuf **tx_pkts, uint16_t nb_pkts);

struct rte_mbuf *nicproxy_rte_pktmbuf_alloc(struct rte_mempool *mp);
int nicproxy_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs,
				    unsigned int count);
void nicproxy_rte_pktmbuf_free(struct rte_mbuf *m);
/* rte_pktmbuf_free_bulk is a real exported function; wrapped anyway so callers need one name set. */
void nicproxy_rte_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned int count);

uint16_t nicproxy_rte_mbuf_refcnt_read(const struct rte_mbuf *m);
uint16_t nicproxy_rte_mbuf_refcnt_update(struct rte_mbuf *m, int16_t value);
void nicproxy_rte_pktmbuf_refcnt_update(struct rte_mbuf *m, int16_t value);

char *nicproxy_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
char *nicproxy_rte_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len);
char *nicproxy_rte_pktmbuf_adj(struct rte_mbuf *m, uint16_t len);
int nicproxy_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);
void *nicproxy_rte_pktmbuf_mtod(const struct rte_mbuf *m);
uint16_t nicproxy_rte_pktmbuf_headroom(const struct rte_mbuf *m);
uint16_t nicproxy_rte_pktmbuf_tailroom(const struct rte_mbuf *m);

int nicproxy_rte_errno(void);
unsigned int nicproxy_rte_lcore_id(void);
uint64_t nicproxy_rte_rdtsc(void);
uint64_t nicproxy_rte_get_tsc_hz(void);

/* The hash function rte_hash uses for 8-byte MAC keys, as a real symbol for a function pointer. */
uint32_t nicproxy_rte_hash_crc(const void *key, uint32_t key_len, uint32_t init_val);

/*
 * DPDK log tap. DPDK reports the cause of most failures only in its log (rte_eal_init says
 * "Cannot get hugepage information." and returns -1 with a generic errno). The tap installs a
 * log stream that keeps the most recent warnings and errors in memory (and still echoes all
 * output to stderr when asked), so that errors can quote what DPDK said. Thread-safe.
 */
/* Installs the tap as DPDK's log stream; 0 on success, -1 if the stream could not be made. */
int nicproxy_log_tap_install(int echo_to_stderr);
/* Forgets everything captured so far. */
void nicproxy_log_tap_clear(void);
/* Copies what was captured since the last clear (its most recent part, up to cap - 1 bytes)
 * into out, NUL-terminated; returns the number of bytes copied, without the NUL. */
size_t nicproxy_log_tap_read(char *out, size_t cap);

#endif
