# Core tests: plan, Block-Sparse rules, exchange and ring on 1..4 ranks, end-to-end CLI runs,
# and one test per class of user error.
sr_unit_test(test_plan_select SOURCES test_plan_select.c LABELS core)

add_executable(test_exchange test_exchange.c)
target_link_libraries(test_exchange PRIVATE sparsering PkgConfig::CMOCKA)
target_include_directories(test_exchange PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
foreach(np 1 2 3 4)
  sr_mpi_test(test_exchange_np${np} NP ${np} COMMAND $<TARGET_FILE:test_exchange> LABELS exchange)
endforeach()
