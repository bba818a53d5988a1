#_*_coding:utf-8_*_
import socket, sys
ip_port=('127.0.0.1',int(sys.argv[1]))
BUFSIZE=1024
udp_server_client=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
while True: #做到循环发消息
    try:
        msg=input('>>: ').strip()
    except EOFError:
        break
    if not msg:continue #解决只有回车没有数据卡住的情况
    udp_server_client.sendto(msg.encode('utf-8'),ip_port) #发信息的内容和端口
    back_msg,addr=udp_server_client.recvfrom(BUFSIZE) #收到的消息和地址
    print(back_msg.decode('utf-8'),addr)
