/* See shim.h: out-of-line copies of DPDK static inlines, so that Rust can call them. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

#include <rte_log.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_cycles.h>
#include <rte_mbuf.h>
#include <rte_ethdev.h>
#include <rte_hash_crc.h>

#include "shim.h"

uint16_t nicproxy_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id,
				   struct rte_mbuf **rx_pkts, uint16_t nb_pkts)
{
	return rte_eth_rx_burst(port_id, queue_id, rx_pkts, nb_pkts);
}

uint16_t nicproxy_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id,
				   struct rte_mbuf **tx_pkts, uint16_t nb_pkts)
{
	return rte_eth_tx_burst(port_id, queue_id, tx_pkts, nb_pkts);
}

struct rte_mbuf *nicproxy_rte_pktmbuf_alloc(struct rte_mempool *mp)
{
	return rte_pktmbuf_alloc(mp);
}

int nicproxy_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs,
				    unsigned int count)
{
	return rte_pktmbuf_alloc_bulk(mp, mbufs, count);
}

void nicproxy_rte_pktmbuf_free(struct rte_mbuf *m)
{
	rte_pktmbuf_free(m);
}

void nicproxy_rte_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned int count)
{
	rte_pktmbuf_free_bulk(mbufs, count);
}

uint16_t nicproxy_rte_mbuf_refcnt_read(const struct rte_mbuf *m)
{
	return rte_mbuf_refcnt_read(m);
}

uint16_t nicproxy_rte_mbuf_refcnt_update(struct rte_mbuf *m, int16_t value)
{
	return rte_mbuf_refcnt_update(m, value);
}

void nicproxy_rte_pktmbuf_refcnt_update(struct rte_mbuf *m, int16_t value)
{
	rte_pktmbuf_refcnt_update(m, value);
}

char *nicproxy_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len)
{
	return rte_pktmbuf_append(m, len);
}

char *nicproxy_rte_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len)
{
	return rte_pktmbuf_prepend(m, len);
}

char *nicproxy_rte_pktmbuf_adj(struct rte_mbuf *m, uint16_t len)
{
	return rte_pktmbuf_adj(m, len);
}

int nicproxy_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len)
{
	return rte_pktmbuf_trim(m, len);
}

void *nicproxy_rte_pktmbuf_mtod(const struct rte_mbuf *m)
{
	return rte_pktmbuf_mtod(m, void *);
}

uint16_t nicproxy_rte_pktmbuf_headroom(const struct rte_mbuf *m)
{
	return rte_pktmbuf_headroom(m);
}

uint16_t nicproxy_rte_pktmbuf_tailroom(const struct rte_mbuf *m)
{
	return rte_pktmbuf_tailroom(m);
}

int nicproxy_rte_errno(void)
{
	return rte_errno;
}

unsigned int nicproxy_rte_lcore_id(void)
{
	return rte_lcore_id();
}

uint64_t nicproxy_rte_rdtsc(void)
{
	return rte_rdtsc();
}

uint64_t nicproxy_rte_get_tsc_hz(void)
{
	return rte_get_tsc_hz();
}

uint32_t nicproxy_rte_hash_crc(const void *key, uint32_t key_len, uint32_t init_val)
{
	return rte_hash_crc(key, key_len, init_val);
}

/* Log tap: the newest TAP_CAP bytes of warnings and errors DPDK logged since the last clear. */
#define TAP_CAP 4096
static pthread_mutex_t tap_lock = PTHREAD_MUTEX_INITIALIZER;
static char tap_buf[TAP_CAP];
static size_t tap_len;
static int tap_echo;

static ssize_t tap_write(void *cookie, const char *buf, size_t size)
{
	(void)cookie;
	if (tap_echo)
		(void)fwrite(buf, 1, size, stderr);
	/* Errors quote the causes DPDK logs, not its chatter ("Detected CPU lcores"...). */
	if (rte_log_cur_msg_loglevel() > (int)RTE_LOG_WARNING)
		return (ssize_t)size;

	pthread_mutex_lock(&tap_lock);
	if (size >= TAP_CAP) {
		memcpy(tap_buf, buf + (size - TAP_CAP), TAP_CAP);
		tap_len = TAP_CAP;
	} else {
		if (tap_len + size > TAP_CAP) {
			size_t drop = tap_len + size - TAP_CAP;
			memmove(tap_buf, tap_buf + drop, tap_len - drop);
			tap_len -= drop;
		}
		memcpy(tap_buf + tap_len, buf, size);
		tap_len += size;
	}
	pthread_mutex_unlock(&tap_lock);
	return (ssize_t)size;
}

int nicproxy_log_tap_install(int echo_to_stderr)
{
	static FILE *stream;
	cookie_io_functions_t fns = { .read = NULL, .write = tap_write, .seek = NULL, .close = NULL };

	tap_echo = echo_to_stderr;
	if (stream == NULL) {
		stream = fopencookie(NULL, "w", fns);
		if (stream == NULL)
			return -1;
		/* DPDK flushes after every message; line buffering keeps partial lines together too. */
		setvbuf(stream, NULL, _IOLBF, 0);
	}
	return rte_openlog_stream(stream);
}

void nicproxy_log_tap_clear(void)
{
	pthread_mutex_lock(&tap_lock);
	tap_len = 0;
	pthread_mutex_unlock(&tap_lock);
}

size_t nicproxy_log_tap_read(char *out, size_t cap)
{
	size_t n;

	if (cap == 0)
		return 0;
	pthread_mutex_lock(&tap_lock);
	n = tap_len < cap - 1 ? tap_len : cap - 1;
	memcpy(out, tap_buf + (tap_len - n), n);
	pthread_mutex_unlock(&tap_lock);
	out[n] = '\0';
	return n;
}
