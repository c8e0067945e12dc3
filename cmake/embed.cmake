# Turns a text file into a C string: -DIN=<file> -DOUT=<c file>. Used for configs/demo.yaml.
file(READ ${IN} content HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," content "${content}")
file(WRITE ${OUT} "/* generated from configs/demo.yaml by cmake/embed.cmake; do not edit */\n")
file(APPEND ${OUT} "const char sr_demo_yaml[] = {${content} 0x00};\n")
