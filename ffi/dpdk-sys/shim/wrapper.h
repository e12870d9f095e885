/* Everything bindgen sees: the DPDK headers nicproxy uses plus the shim's prototypes. */
#ifndef NICPROXY_DPDK_WRAPPER_H
#define NICPROXY_DPDK_WRAPPER_H

#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_thread.h>
#include <rte_cycles.h>
#include <rte_dev.h>
#include <rte_bus_vdev.h>
#include <rte_mempool.h>
#include <rte_mbuf.h>
#include <rte_ethdev.h>
#include <rte_hash.h>
#include <rte_jhash.h>
#include <rte_hash_crc.h>

#include "shim.h"

#endif
