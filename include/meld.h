/* Meld umbrella header. Link with -lmeld (pkg-config meld). */
#ifndef MELD_H
#define MELD_H
#include "meld/meld_base.h"
#include "meld/meld_merge.h"
#include "meld/meld_sparse.h"
#include "meld/meld_moe.h"
#include "meld/meld_device.h"
#endif
