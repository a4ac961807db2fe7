#include "common/grid.h"

#include <atomic>

namespace apnt {
namespace {
std::atomic<bool> g_emulate{false};
}
bool grid_emulation_enabled() { return g_emulate.load(std::memory_order_relaxed); }
bool set_grid_emulation(bool on) { return g_emulate.exchange(on); }
}  // namespace apnt
