#_*_coding:utf-8_*_
import socket, sys
ip_port=('127.0.0.1',int(sys.argv[1]))
BUFSIZE=1024
s=socket.socket(socket.AF_INET,socket.SOCK_STREAM)
s.connect_ex(ip_port) #连接到地址
while True:
    try:
        msg=input('输入:')
    except EOFError:
        break
    if not msg:continue #解决只有回车没有数据卡住的情况
    s.send(msg.encode('utf-8')) #发消息,编码方式
    feedback=s.recv(BUFSIZE) #收消息
    print(feedback.decode('utf-8'))
s.close() #退出
