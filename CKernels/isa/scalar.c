/* The scalar instantiation of every microkernel template, and its registry entry. */
#include <stddef.h>
#include <stdint.h>
#include "meld.h"
#include "../ukernels/ukernel.h"


#include "../simd/simd_scalar.h"
#define MELD_ISA_ID MELD_ISA_SCALAR
#include "../ukernels/common.tpl.h"
#include "../ukernels/merge.tpl.h"
#include "../ukernels/select.tpl.h"
#include "../ukernels/philox.tpl.h"
#include "../ukernels/reduce.tpl.h"
#include "../ukernels/gemm.tpl.h"
#include "../ukernels/registry.tpl.h"

