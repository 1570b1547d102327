# The layering rule, checked at every build (cmake -DSOURCE_DIR=... -P check_layering.cmake): a file
# in a folder may include project headers only from the folders listed for it below (its own
# included). Anything else stops the build with the file, the line and the rule. Tests, benchmarks
# and programs may include everything. The table is the one in docs/architecture.md. A folder of the
# layers that holds sources but has no rule stops the build too (it would go unchecked).
set(rules
  "tensor:tensor,tensor/cpu,tensor/cuda"
  "tensor/cpu:tensor,tensor/cpu"
  "tensor/cuda:tensor,tensor/cuda"
  "io:tensor,io"
  "autograd:tensor,autograd"
  "nn:tensor,autograd,nn"
  "lm:tensor,tensor/cuda,io,autograd,nn,lm"
  "sae:tensor,io,autograd,nn,sae"
  "sae/step:tensor,tensor/cpu,tensor/cuda,sae,sae/step"
  "sae/data:tensor,tensor/cuda,io,lm,sae/data"
  "sae/report:tensor,io,sae/report"
  "sae/train:tensor,tensor/cuda,io,lm,sae,sae/step,sae/arch,sae/data,sae/report,sae/train"
  "sae/study:tensor,io,sae,sae/step,sae/arch,sae/data,sae/report,sae/train,sae/study"
  "sae/features:tensor,tensor/cuda,io,lm,sae,sae/step,sae/arch,sae/data,sae/train,sae/features"
  "sae/dist:tensor,tensor/cuda,io,sae,sae/step,sae/arch,sae/dist"
  "sae/cli:tensor,tensor/cuda,io,lm,sae,sae/step,sae/arch,sae/data,sae/report,sae/train,sae/study,sae/dist,sae/cli"
  "sae/eval:tensor,io,lm,sae,sae/arch,sae/data,sae/report,sae/train,sae/features,sae/eval")

# The architecture units (docs/architectures.md "Adding an architecture"): sae/arch (the interface,
# registry, step owner and shared parts) may include every unit's folder; a unit's folder
# sae/arch/<unit> may include the layers below, sae/arch and itself, never another unit.
set(unit_base "tensor,tensor/cpu,tensor/cuda,io,autograd,nn,sae,sae/step,sae/arch")
file(GLOB unit_folders LIST_DIRECTORIES true RELATIVE "${SOURCE_DIR}" "${SOURCE_DIR}/sae/arch/*")
set(arch_allowed "${unit_base}")
foreach(unit ${unit_folders})
  if(IS_DIRECTORY "${SOURCE_DIR}/${unit}")
    list(APPEND rules "${unit}:${unit_base},${unit}")
    string(APPEND arch_allowed ",${unit}")
  endif()
endforeach()
list(APPEND rules "sae/arch:${arch_allowed}")

set(violations "")
foreach(rule ${rules})
  string(REPLACE ":" ";" parts "${rule}")
  list(GET parts 0 folder)
  list(GET parts 1 allowed_text)
  string(REPLACE "," ";" allowed "${allowed_text}")
  file(GLOB files "${SOURCE_DIR}/${folder}/*.h" "${SOURCE_DIR}/${folder}/*.cpp" "${SOURCE_DIR}/${folder}/*.cu"
       "${SOURCE_DIR}/${folder}/*.cuh")
  foreach(path ${files})
    file(STRINGS "${path}" includes REGEX "^[ \t]*#[ \t]*include[ \t]*\"")
    foreach(line ${includes})
      string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*\"([^\"]*)\".*$" "\\1" header "${line}")
      get_filename_component(header_folder "${header}" DIRECTORY)
      if(header_folder STREQUAL "")
        continue()  # a file beside it (none in this project) or a system-style local header
      endif()
      list(FIND allowed "${header_folder}" found)
      if(found EQUAL -1)
        file(RELATIVE_PATH relative "${SOURCE_DIR}" "${path}")
        string(APPEND violations "\n  ${relative}: #include \"${header}\" (${folder}/ may include only ${allowed_text})")
      endif()
    endforeach()
  endforeach()
endforeach()
# A library folder without a rule would go unchecked: every folder of the layers that holds sources
# must be listed above.
set(ruled "")
foreach(rule ${rules})
  string(REPLACE ":" ";" parts "${rule}")
  list(GET parts 0 folder)
  list(APPEND ruled "${folder}")
endforeach()
foreach(root tensor io autograd nn lm sae)
  file(GLOB_RECURSE sources RELATIVE "${SOURCE_DIR}" "${SOURCE_DIR}/${root}/*.h" "${SOURCE_DIR}/${root}/*.cpp"
       "${SOURCE_DIR}/${root}/*.cu" "${SOURCE_DIR}/${root}/*.cuh")
  foreach(source ${sources})
    get_filename_component(folder "${source}" DIRECTORY)
    list(FIND ruled "${folder}" found)
    if(found EQUAL -1)
      string(APPEND violations "\n  ${source}: its folder ${folder}/ has no layering rule (add one above and to docs/architecture.md)")
    endif()
  endforeach()
endforeach()
if(violations)
  message(FATAL_ERROR "layering: a folder includes a layer it may not use, or has no rule:${violations}")
endif()
